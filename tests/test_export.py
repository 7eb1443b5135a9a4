import numpy as np
import onnx

from unlearnops.export import export_onnx, inference_session
from unlearnops.model import SmallCNN, predict_logits, seed_everything


def test_onnx_export_dynamic_batch_and_parity(tmp_path):
    seed_everything(0)
    model = SmallCNN()
    sample = np.random.default_rng(0).random((80, 1, 28, 28), dtype=np.float32)
    result = export_onnx(model, sample, tmp_path / "m.onnx")
    assert result.max_abs_diff <= 1e-4
    assert result.providers and result.providers[-1] == "CPUExecutionProvider"
    onnx.checker.check_model(str(tmp_path / "m.onnx"))
    session = inference_session(tmp_path / "m.onnx")
    (out,) = session.run(None, {"input": sample[:33]})  # a batch size not used in the parity check
    assert out.shape == (33, 10)
    np.testing.assert_allclose(out, predict_logits(model, sample[:33]).numpy(), rtol=1e-4, atol=1e-5)
    # Self-contained: the weights live in the one file that is hashed and logged, nothing beside it.
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    (tmp_path / "m.onnx").rename(moved / "m.onnx")
    inference_session(moved / "m.onnx").run(None, {"input": sample[:2]})


def test_onnx_opset_is_pinned_and_metadata_written(tmp_path):
    import unlearnops
    from unlearnops.export import ONNX_OPSET, onnx_metadata

    sample = np.random.default_rng(1).random((16, 1, 28, 28), dtype=np.float32)
    with onnx_metadata({"model_name": "digits", "unlearnops_run": "run-1"}):
        export_onnx(SmallCNN(), sample, tmp_path / "m.onnx", metadata={"method": "slug"})
    proto = onnx.load(str(tmp_path / "m.onnx"))
    assert {o.domain: o.version for o in proto.opset_import}[""] == ONNX_OPSET
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["unlearnops_version"] == unlearnops.__version__
    assert (props["model_name"], props["unlearnops_run"], props["method"]) == ("digits", "run-1", "slug")
    inference_session(tmp_path / "m.onnx").run(None, {"input": sample[:3]})


def test_plain_networks_take_the_fast_exporter_and_a_wrong_trace_hands_over_to_torch_export(tmp_path):
    """A trace records one path through the model; where that path depends on the batch (here: whether
    its size is even), the traced file misses parity at another batch size and torch.export's file is kept."""
    from torch import nn

    class BatchParityDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            even = x.new_tensor([x.shape[0] % 2 == 0]).float().item()  # a number to the trace, fixed
            return self.fc(x) - self.fc(x).mean(0, keepdim=True) * even

    seed_everything(0)
    model = BatchParityDependent()
    tabular = np.random.default_rng(2).random((64, 4), dtype=np.float32)
    odd = export_onnx(model, tabular, tmp_path / "odd.onnx")
    assert odd.exporter == "dynamo" and odd.max_abs_diff <= 1e-4
    session = inference_session(tmp_path / "odd.onnx")
    for size in (4, 5):
        (out,) = session.run(None, {"input": tabular[:size]})
        np.testing.assert_allclose(out, predict_logits(model, tabular[:size]).numpy(), rtol=1e-4, atol=1e-5)
    plain = export_onnx(SmallCNN(), np.random.default_rng(3).random((16, 1, 28, 28), dtype=np.float32),
                        tmp_path / "cnn.onnx")
    assert plain.exporter == "torchscript" and plain.to_dict()["exporter"] == "torchscript"
