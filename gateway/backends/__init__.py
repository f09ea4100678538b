"""Model servers behind one small interface: embedded ONNX Runtime, Triton, TF Serving."""
