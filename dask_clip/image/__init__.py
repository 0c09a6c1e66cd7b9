"""Images: what an image column holds (sources), decoding (Pillow, nvJPEG), the input stage
(resize/crop to the model's input) and the model's preprocessing config.
"""
