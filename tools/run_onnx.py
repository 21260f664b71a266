"""Runs an ONNX model with ONNX Runtime (the real client of `famix export`).

Usage: run_onnx.py MODEL.onnx INPUT.npy OUTPUT.npy
Feeds INPUT.npy as the model's only input on the CPU and saves its only output.
Prints the model's metadata as JSON. Used by tests/export.rs.
"""
import json
import sys

import numpy as np
import onnxruntime as ort


def main():
    model, inp, out = sys.argv[1:4]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    (i,) = sess.get_inputs()
    (result,) = sess.run(None, {i.name: np.load(inp)})
    np.save(out, result)
    json.dump(sess.get_modelmeta().custom_metadata_map, sys.stdout)


if __name__ == "__main__":
    main()
