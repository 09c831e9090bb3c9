"""Export a trained network to standard runtimes (ONNX: `convnet_cli.export.onnx`)."""
