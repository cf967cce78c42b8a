"""The tiny model and untrained run folder that tests needing *a* run share."""
from flax import nnx

from jaxformer import GPT, load_config
from jaxformer.training.checkpoint import save_checkpoint, save_run_folder
from jaxformer.data import ByteTokenizer

#: One layer, width 16, context 16, byte tokens: the smallest model every command accepts.
TINY = ["model.vocab_size=256", "model.d_model=16", "model.n_head=2", "model.n_layer=1",
        "model.d_ff=32", "model.max_len=16", "data.tokenizer=byte"]


def tiny_run(folder):
    """Write a run folder of the :data:`TINY` config (random weights at step 1) into ``folder``."""
    cfg = load_config(None, TINY)
    save_run_folder(folder, cfg, ByteTokenizer())
    save_checkpoint(folder, 1, GPT(cfg.model, rngs=nnx.Rngs(0)).params())
    return folder
