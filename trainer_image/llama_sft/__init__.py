"""A tiny Llama-architecture causal LM trained from scratch by reasoning SFT on generated addition problems.

The system prompt toggles reasoning the way Llama-Nemotron does: ``detailed thinking on`` trains (and asks
for) a worked, digit-by-digit solution, ``detailed thinking off`` a direct answer. Pure torch + stdlib:
``model`` (the network and greedy decoding), ``data`` (tokenizer, problems, chat format, SFT batches),
``evaluate`` (held-out answer accuracy in both modes) and ``config`` (the measured training defaults).
"""
