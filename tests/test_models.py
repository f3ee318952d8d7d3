import pytest

from probing.models import ModelLoadError, ModelSpec, load_model, resolve_source


def test_embedded_model_describes_itself(model):
    info = model.describe()
    assert (info["blocks"], info["width"], info["architecture"]) == (30, 576, "LlamaForCausalLM")
    assert model.n_hidden_states == 31
    assert 130e6 < info["parameters"] < 140e6
    assert info["device"] == "cpu" and info["dtype"] == "float32"


def test_fingerprint_is_stable_and_keys_dtype_and_device():
    spec = ModelSpec("embedded")
    assert spec.fingerprint() == ModelSpec("embedded").fingerprint()
    assert spec.fingerprint() != ModelSpec("embedded", dtype="bfloat16").fingerprint()
    assert spec.fingerprint() != ModelSpec("embedded", device="cuda", dtype="float32").fingerprint()


def test_presets_resolve_to_hub_ids():
    assert ModelSpec("llama-2-7b").resolved_name == "meta-llama/Llama-2-7b-hf"
    assert resolve_source("meta-llama/Llama-2-13b-hf").kind == "hub"


def test_unknown_hub_model_offline_names_model_and_what_to_do(tmp_path):
    with pytest.raises(ModelLoadError) as error:
        load_model("no-such-org/no-such-model", cache_dir=tmp_path)
    message = str(error.value)
    assert "'no-such-org/no-such-model'" in message
    assert "offline" in message or "Check the spelling" in message


def test_missing_files_and_folders_are_explained(tmp_path):
    with pytest.raises(ModelLoadError, match="no such GGUF file"):
        load_model(str(tmp_path / "missing.gguf"))
    with pytest.raises(ModelLoadError, match="has no config.json"):
        load_model(str(tmp_path))
    with pytest.raises(ModelLoadError, match="no such folder"):
        load_model("./not/a/folder")
    with pytest.raises(ValueError, match="dtype 'int8'"):
        ModelSpec("embedded", dtype="int8")


def test_broken_local_folder_is_one_clear_error(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(ModelLoadError, match=r"could not be loaded \("):
        load_model(str(tmp_path))
