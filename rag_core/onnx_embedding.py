"""The ONNX embedding backends (`RAG_EMBEDDING_BACKEND=onnx`, `onnx-int8` and `openvino`).

A sentence-transformers model of the shape Transformer → mean Pooling → (Normalize) is exported once:
the transformer to ONNX (torch.onnx.export), fused with onnxruntime's transformer optimizer (attention,
layer norms, GELU), checked against the torch model on probe texts, and for `onnx-int8` dynamically
quantized (int8 weights per output channel, int8 activations per tensor; the first encoder layer stays fp32,
which is what keeps cosine ≥ 0.99 against the torch vectors on short queries too). `openvino` converts the
fp32 graph to OpenVINO IR (`model-openvino.xml` + `.bin`, fp32 weights), checks it against the torch model
too, and runs it with OpenVINO's CPU plugin at the plugin's default precision: bf16 on CPUs with AMX or
AVX512-BF16 (oneDNN's AMX kernels), fp32 elsewhere. The files are cached under the directory the caller
passes (the data dir's `models/onnx/<model version>/`), never next to the model. Encoding tokenizes with the
model's fast tokenizer exactly as sentence-transformers does (truncated at max_seq_length, special tokens,
right padding), sorts by length, pads each batch only to its own longest text, runs one reused session
(OpenVINO: one compiled model), mean-pools with the attention mask and L2-normalises.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import threading
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

ONNX_BACKENDS = ("onnx", "onnx-int8", "openvino")
MODEL_FILES = {"onnx": "model.onnx", "onnx-int8": "model-int8.onnx", "openvino": "model-openvino.xml"}
OPSET = 17
PROBE_TEXTS = (
    "query",
    "Microstructural development of human newborn cerebral white matter assessed in vivo.",
    "A much longer passage about protein folding, gene expression and clinical outcomes. " * 40,
)
_export_lock = threading.Lock()


class UnsupportedModel(ValueError):
    """The model is not Transformer → mean pooling → normalize; only the torch backend can run it."""


@dataclass(frozen=True)
class PipelineConfig:
    """What sentence-transformers would do with a model directory, read from its config files."""

    transformer_dir: Path
    max_seq_length: int
    dimension: int
    do_lower_case: bool


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def pipeline_config(model_dir: Path) -> PipelineConfig:
    """Transformer → mean Pooling → optional Normalize, or a clear error naming the torch backend."""
    fallback = "set RAG_EMBEDDING_BACKEND=torch for this model"
    modules_file = model_dir / "modules.json"
    if modules_file.is_file():
        modules = json.loads(modules_file.read_text())
    else:  # a bare transformers directory: sentence-transformers adds mean pooling itself
        modules = [{"path": "", "type": "Transformer"}, {"path": "", "type": "Pooling"}]
    kinds = [str(module.get("type", "")).rsplit(".", 1)[-1] for module in modules]
    if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
        raise UnsupportedModel(
            f"{model_dir} is a {' → '.join(kinds) or 'empty'} pipeline; the onnx backends run only "
            f"Transformer → Pooling (mean) → Normalize — {fallback}"
        )
    transformer_dir = model_dir / modules[0].get("path", "")
    config = _read_json(transformer_dir / "config.json")
    pooling = _read_json(model_dir / modules[1].get("path", "") / "config.json") if modules[1].get("path") else {}
    mode = pooling.get("pooling_mode")
    if mode is None and pooling:  # sentence-transformers < 6 wrote one boolean per mode
        mode = [key.removeprefix("pooling_mode_") for key, value in pooling.items()
                if key.startswith("pooling_mode_") and value is True]
        mode = {"mean_tokens": "mean"}.get(mode[0], mode[0]) if len(mode) == 1 else mode
    if (mode or "mean") != "mean":
        raise UnsupportedModel(
            f"{model_dir} pools with {mode!r}; the onnx backends implement mean pooling only — {fallback}"
        )
    st_config = _read_json(transformer_dir / "sentence_bert_config.json") or _read_json(
        model_dir / "sentence_bert_config.json"
    )
    tokenizer_config = _read_json(transformer_dir / "tokenizer_config.json")
    limit = st_config.get("max_seq_length") or tokenizer_config.get("model_max_length")
    positions = config.get("max_position_embeddings")
    if not limit or limit > 1e9:
        limit = positions
    if positions and positions > 0:
        limit = min(limit, positions)
    if not limit:
        raise UnsupportedModel(f"{model_dir} records no max_seq_length — {fallback}")
    dimension = (
        pooling.get("embedding_dimension") or pooling.get("word_embedding_dimension") or config.get("hidden_size")
    )
    return PipelineConfig(transformer_dir, int(limit), int(dimension), bool(st_config.get("do_lower_case")))


def model_file(cache_dir: Path, version: str, backend: str) -> Path:
    """Where the exported model for this model version and backend lives."""
    return cache_dir / re.sub(r"[^A-Za-z0-9_.@-]+", "_", version) / MODEL_FILES[backend]


def ensure_model_file(model_dir: Path, cache_dir: Path, version: str, backend: str) -> Path:
    """The cached model file for `backend`, exported (and quantized or converted) on first use."""
    target = model_file(cache_dir, version, backend)
    if target.is_file():
        return target
    with _export_lock:
        if target.is_file():
            return target
        fp32 = model_file(cache_dir, version, "onnx")
        if not fp32.is_file():
            export_onnx(model_dir, fp32)
        if backend == "onnx-int8":
            quantize_int8(fp32, target, pipeline_config(model_dir).transformer_dir)
        elif backend == "openvino":
            convert_openvino(model_dir, fp32, target)
    return target


def _temporary(target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    return target.with_name(f".{target.stem}.{uuid.uuid4().hex[:8]}{target.suffix}")


def export_onnx(model_dir: Path, target: Path) -> Path:
    """The transformer of `model_dir` as one fused fp32 ONNX graph at `target` (written atomically)."""
    import torch

    pipeline, config, model, tokenizer, names = _torch_transformer(model_dir)

    class LastHiddenState(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            return self.model(**dict(zip(names, inputs, strict=True))).last_hidden_state

    sample = tokenizer(list(PROBE_TEXTS[:2]), padding=True, return_tensors="pt")
    axes = {name: {0: "batch", 1: "sequence"} for name in [*names, "last_hidden_state"]}
    raw, staging = _temporary(target), _temporary(target)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                LastHiddenState().eval(), tuple(sample[name] for name in names), str(raw), input_names=names,
                output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=OPSET, dynamo=False,
                do_constant_folding=True,
            )
        _optimize(raw, staging, config)
        _check_against_torch(_onnxruntime_runner(staging), model.eval(), tokenizer, names, pipeline.max_seq_length)
        os.replace(staging, target)
    finally:
        raw.unlink(missing_ok=True)
        staging.unlink(missing_ok=True)
    log.info("exported %s to %s", model_dir, target)
    return target


def _torch_transformer(model_dir: Path):
    """The pipeline config, HF config, torch model (eager attention), tokenizer and input names of `model_dir`."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    pipeline = pipeline_config(model_dir)
    source = str(pipeline.transformer_dir)
    config = AutoConfig.from_pretrained(source, local_files_only=True)
    model = AutoModel.from_pretrained(source, local_files_only=True, attn_implementation="eager").eval()
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    names = [name for name in ("input_ids", "attention_mask", "token_type_ids") if name in tokenizer.model_input_names]
    return pipeline, config, model, tokenizer, names


def _optimize(source: Path, target: Path, config) -> None:
    """Fuse attention, layer norms and GELU for BERT-like encoders; other architectures stay as exported
    (onnxruntime still applies its own graph optimizations when the session loads)."""
    if config.model_type not in ("bert", "roberta", "xlm-roberta", "camembert"):
        os.replace(source, target)
        return
    from onnxruntime.transformers import optimizer

    optimized = optimizer.optimize_model(
        str(source), model_type="bert", num_heads=config.num_attention_heads, hidden_size=config.hidden_size,
        opt_level=0,
    )
    optimized.save_model_to_file(str(target))  # also declares the com.microsoft opset of the fused ops


def _onnxruntime_runner(path: Path):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda feed: session.run(None, feed)[0]


def _check_against_torch(
    run, model, tokenizer, names: list[str], max_seq_length: int, minimum: float = 0.9999, what: str = "ONNX export"
) -> None:
    """The exported graph (`run`: inputs → last hidden state) must reproduce the torch model: an exporter, fusion
    or conversion bug fails here, not in an index."""
    import torch

    batch = tokenizer(list(PROBE_TEXTS), padding=True, truncation=True, max_length=max_seq_length, return_tensors="pt")
    with torch.no_grad():
        expected = model(**{name: batch[name] for name in names}).last_hidden_state
    mask = batch["attention_mask"].numpy()[..., None].astype(np.float32)
    got = _pool(np.asarray(run({name: batch[name].numpy() for name in names}), dtype=np.float32), mask)
    want = _pool(expected.numpy(), mask)
    worst = float(np.min(np.sum(got * want, axis=1)))
    if worst < minimum:
        raise RuntimeError(
            f"the {what} disagrees with the torch model (cosine {worst:.5f}) — set RAG_EMBEDDING_BACKEND=torch"
        )


# bf16 keeps 8 bits of mantissa: the probe texts stay above 0.9999 on a Sapphire Rapids; a conversion bug does not.
OPENVINO_MIN_COSINE = 0.999


def convert_openvino(model_dir: Path, source: Path, target: Path) -> Path:
    """The fp32 ONNX graph `source` as OpenVINO IR at `target` (.xml, and its .bin beside it; fp32 weights),
    checked against the torch model at the precision the CPU plugin will run it with."""
    import openvino as ov

    pipeline, _, model, tokenizer, names = _torch_transformer(model_dir)
    staging = _temporary(target)
    try:
        ov.save_model(ov.convert_model(str(source)), str(staging), compress_to_fp16=False)
        runner = _OpenVinoModel(staging, default_threads())
        _check_against_torch(
            lambda feed: runner.infer(feed, lambda hidden: hidden.copy()), model, tokenizer, names,
            pipeline.max_seq_length, OPENVINO_MIN_COSINE, f"OpenVINO conversion ({runner.precision})",
        )
        os.replace(staging.with_suffix(".bin"), target.with_suffix(".bin"))
        os.replace(staging, target)  # the .xml last: it is what ensure_model_file looks for
    finally:
        staging.unlink(missing_ok=True)
        staging.with_suffix(".bin").unlink(missing_ok=True)
    log.info("converted %s to OpenVINO IR at %s", source, target)
    return target


def quantize_int8(source: Path, target: Path, transformer_dir: Path) -> Path:
    """Dynamic int8 quantization of the fp32 graph; the first encoder layer is left in fp32."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(source), load_external_data=False)
    weights = {initializer.name for initializer in graph.graph.initializer}
    quantizable = [
        node.name for node in graph.graph.node
        if node.op_type == "Attention" or (node.op_type == "MatMul" and node.input[1] in weights)
    ]
    layers = int(_read_json(transformer_dir / "config.json").get("num_hidden_layers") or 0)
    first_layer = quantizable[: len(quantizable) // layers] if layers else []
    staging = _temporary(target)
    try:
        quantize_dynamic(
            str(source), str(staging), per_channel=True, weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul", "Attention"], nodes_to_exclude=first_layer,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},  # the fused ops have no shape inference
        )
        os.replace(staging, target)
    finally:
        staging.unlink(missing_ok=True)
    log.info("quantized %s to %s", source, target)
    return target


def _pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean over the unmasked tokens, then L2 normalisation (sentence-transformers' Pooling + Normalize)."""
    pooled = np.einsum("bld,bl->bd", hidden, mask[..., 0]) / np.maximum(mask.sum(axis=1), 1e-9)
    return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)


def default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class OnnxEncoder:
    """One onnxruntime session and one tokenizer, reused for every call; safe to call from several threads."""

    def __init__(self, path: Path, model_dir: Path, batch_size: int = 64, threads: int | None = None) -> None:
        from tokenizers import Tokenizer
        from transformers import AutoTokenizer

        pipeline = pipeline_config(model_dir)
        self.inputs = self._open(path, threads or default_threads())
        hf = AutoTokenizer.from_pretrained(str(pipeline.transformer_dir), local_files_only=True)
        if not hf.is_fast:
            raise UnsupportedModel(f"{model_dir} has no fast tokenizer — set RAG_EMBEDDING_BACKEND=torch for it")
        # Our own copy: truncation and padding are configured once here, never per call (thread safety).
        self.tokenizer = Tokenizer.from_str(hf.backend_tokenizer.to_str())
        self.tokenizer.enable_truncation(pipeline.max_seq_length, strategy="longest_first", direction="right")
        self.tokenizer.no_padding()
        self.pad_id = hf.pad_token_id or 0
        self.lower = pipeline.do_lower_case
        self.dimension = pipeline.dimension
        self.batch_size = batch_size

    def encode(self, texts: Sequence[str], show_progress: bool = False) -> np.ndarray:
        texts = [text.lower() for text in texts] if self.lower else list(texts)
        if len(texts) == 1:  # a query: no sorting, no padding
            ids = np.asarray([self.tokenizer.encode(texts[0]).ids], dtype=np.int64)
            return self._run(ids, np.ones_like(ids))
        encodings = self.tokenizer.encode_batch(texts)
        lengths = np.fromiter((len(encoding.ids) for encoding in encodings), dtype=np.int64, count=len(texts))
        order = np.argsort(-lengths, kind="stable")  # longest first: batches of similar lengths, little padding
        vectors = np.empty((len(texts), self.dimension), dtype=np.float32)
        starts = range(0, len(texts), self.batch_size)
        if show_progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="Batches", unit="batch")
        for start in starts:
            rows = order[start : start + self.batch_size]
            width = int(lengths[rows[0]])
            ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.int64)
            for row, position in enumerate(rows):
                ids[row, : lengths[position]] = encodings[position].ids
                mask[row, : lengths[position]] = 1
            vectors[rows] = self._run(ids, mask)
        return vectors

    def _open(self, path: Path, threads: int) -> list[str]:
        """Load the model; its input names."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle threads sleep instead of spinning: a serving process has other work for the cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return [item.name for item in self.session.get_inputs()]

    def _feed(self, ids: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        return {name: feed[name] for name in self.inputs}

    def _run(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        hidden = self.session.run(None, self._feed(ids, mask))[0]
        return _pool(hidden, mask[..., None].astype(np.float32)).astype(np.float32, copy=False)


class _OpenVinoModel:
    """An OpenVINO CPU compiled model with a pool of infer requests (one request serves one call at a time)."""

    def __init__(self, path: Path, threads: int) -> None:
        import openvino as ov
        import openvino.properties as props
        import openvino.properties.hint as hints

        core = ov.Core()
        self.compiled = core.compile_model(core.read_model(str(path)), "CPU", {
            hints.performance_mode: hints.PerformanceMode.LATENCY,  # one stream: each call uses every thread
            props.inference_num_threads: threads,
            props.num_streams: 1,
            hints.enable_cpu_pinning: False,  # a serving process has other work for the cores
        })
        self.precision = self.compiled.get_property(hints.inference_precision).get_type_name()  # bf16 or f32
        self.inputs = [port.any_name for port in self.compiled.inputs]
        self._idle: queue.SimpleQueue = queue.SimpleQueue()

    def infer(self, feed: dict[str, np.ndarray], use):
        """`use(last_hidden_state)` while the request still owns the output buffer (it is not copied)."""
        try:
            request = self._idle.get_nowait()
        except queue.Empty:
            request = self.compiled.create_infer_request()
        try:
            return use(request.infer(feed, share_outputs=True)[0])
        finally:
            self._idle.put(request)


class OpenVinoEncoder(OnnxEncoder):
    """The `openvino` backend: OnnxEncoder's tokenization and batching, inference by OpenVINO's CPU plugin."""

    def _open(self, path: Path, threads: int) -> list[str]:
        self.model = _OpenVinoModel(path, threads)
        return self.model.inputs

    def _run(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        weights = mask[..., None].astype(np.float32)
        return self.model.infer(self._feed(ids, mask), lambda hidden: _pool(hidden, weights).astype(np.float32))
