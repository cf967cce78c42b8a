"""What the transformers parity tests share: perturbing a random model's every weight, and the
SentencePiece-Unigram tokenizer XLM-R uses, trained here (no Hub). Imports torch and transformers
only when called."""


def perturb(model, seed: int, scale: float = 0.2):
    """Add noise to every parameter of a torch model: norms and biases stop being 1 / 0."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.named_parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


def xlmr_unigram_tokenizer(texts, vocab_size: int):
    """An ``XLMRobertaTokenizerFast`` over a Unigram model trained on ``texts``, with the
    pre-tokenizer transformers 5 gives XLMRobertaTokenizer (it rebuilds it from the class)."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tk = Tokenizer(models.Unigram())
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace()])
    tk.train_from_iterator(list(texts) * 5, trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"], unk_token="<unk>",
        show_progress=False))
    tk.post_processor = processors.TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
                                                      special_tokens=[("<s>", 0), ("</s>", 2)])
    tk.decoder = decoders.Metaspace()
    return transformers.XLMRobertaTokenizerFast(tokenizer_object=tk)
