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
