"""convnet: cuda-convnet style training of conv and recurrent nets on audio spectrograms."""

__version__ = "0.1.0"
