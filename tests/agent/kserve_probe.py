"""Run by tests/agent/test_kserve_client.py in its own venv with KServe's SDK (which cannot be
installed next to edgekit's pins): KServe's InferenceRESTClient against an edgekit OIP server.
Prints one JSON object."""

from __future__ import annotations

import asyncio
import json
import sys

import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig


async def main() -> None:
    url, model = sys.argv[1], sys.argv[2]
    c = InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=30))
    out = {
        "live": await c.is_server_live(url),
        "ready": await c.is_server_ready(url),
        "model_ready": await c.is_model_ready(url, model),
    }
    x = np.array(json.loads(sys.argv[3]), np.float32)
    for binary in (False, True):
        i = InferInput("input", list(x.shape), "FP32")
        i.set_data_from_numpy(x, binary_data=binary)
        r = await c.infer(url, InferRequest(model_name=model, infer_inputs=[i]), model_name=model)
        o = r.outputs[0]
        out[f"binary={binary}"] = {
            "name": o.name,
            "shape": list(o.shape),
            "data": o.as_numpy().tolist(),
            "model": r.model_name,
        }
    try:
        await c.infer(url, InferRequest(model_name="nope", infer_inputs=[i]), model_name="nope")
        out["unknown"] = "answered"
    except Exception as e:
        out["unknown"] = type(e).__name__ + ": " + str(e)[:200]
    await c.close()
    print(json.dumps(out))


asyncio.run(main())
