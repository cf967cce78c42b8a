"""The eager PyTorch GPT the tests check against (``tests/jaxformer_testing/torch_gpt.py``),
for the benchmarks that time or compare with it. It is loaded by its file path, so ``tests/``
never goes on ``sys.path``; scripts import this module lazily, where they need torch."""
import importlib.util
import pathlib


def torch_gpt():
    """The ``tests/jaxformer_testing/torch_gpt.py`` module (needs torch)."""
    path = pathlib.Path(__file__).resolve().parents[1] / "tests" / "jaxformer_testing" / "torch_gpt.py"
    spec = importlib.util.spec_from_file_location("jaxformer_testing_torch_gpt", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
