"""An offline byte-level BPE tokenizer for tiny test checkpoints, trained on an embedded
English text with the `tokenizers` library (nothing downloaded). Saved so that
transformers' AutoTokenizer (and therefore vLLM) loads it: tokenizer.json,
tokenizer_config.json and special_tokens_map.json. Every input string encodes (byte
level); "<s>" is prepended as BOS; "</s>" is EOS."""
from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

UNK, BOS, EOS = "<unk>", "<s>", "</s>"
SPECIAL_TOKENS = [UNK, BOS, EOS]  # ids 0, 1, 2

CORPUS = """\
The harbour town wakes before the sun. Fishing boats slip out past the lighthouse while the
bakers pull the first loaves from their ovens, and the smell of bread drifts along the quay.
Children run to school with their coats open, teachers unlock the heavy doors, and the old
clock above the market square strikes seven. Nobody remembers who built the clock, but
everyone agrees that it has never once been on time.
In the afternoon the wind turns and comes in from the sea. Gulls circle over the nets, the
ferry sounds its horn twice, and travellers carry their bags up the hill to the station.
A train leaves every hour for the city, where the streets are wider, the buildings taller,
and the people walk faster than they need to. Some of them will come back on Sunday.
Learning a language takes patience. First you learn the words for water, bread and home;
then you learn to ask for directions, to count money, to talk about the weather. Later you
discover jokes, songs and stories, and one day you notice that you are dreaming in the new
language. Questions become easier to answer, and answers become easier to question.
Computers follow instructions exactly. A program is a list of small steps: read a number,
add another number, compare the result, store it in memory, and repeat. Modern machines do
billions of these steps every second, yet a single missing comma can stop them completely.
Good engineers test their work, measure what they change, and write down what they learn.
The garden behind the library is quiet in every season. In spring the apple trees flower,
in summer the bees are busy among the lavender, in autumn the leaves turn red and gold, and
in winter the paths are white with frost. Readers sit on the benches with their books, and
sometimes they forget to go home until the lamps are lit and the gates are closed.
What is the capital of France? Paris is the capital of France. How many days are there in
a week? There are seven days in a week. Which planet is closest to the sun? Mercury is the
closest planet to the sun. Why is the sky blue? Sunlight is scattered by the air.
"""


def build_tokenizer(vocab_size: int = 512) -> Tokenizer:
    """Deterministic byte-level BPE trained on CORPUS."""
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
    return _prepend_bos(tok)


def _prepend_bos(tok: Tokenizer) -> Tokenizer:
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, tok.token_to_id(BOS))])
    return tok


def save_tokenizer(tok: Tokenizer, path: Path, model_max_length: int) -> None:
    tok.save(str(path / "tokenizer.json"))
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": UNK}
    (path / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": model_max_length,
              "clean_up_tokenization_spaces": False, **special}
    (path / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def build_wordlevel_tokenizer(vocab_size: int) -> Tokenizer:
    """A tokenizer with exactly `vocab_size` ids ("<unk>", "<s>", "</s>", then "t3", "t4", ...),
    words split on whitespace: every id decodes and re-encodes to itself. For benchmark
    models with dummy weights, whose generated ids span the whole vocabulary."""
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    vocab.update({f"t{i}": i for i in range(len(SPECIAL_TOKENS), vocab_size)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(SPECIAL_TOKENS)
    return _prepend_bos(tok)
