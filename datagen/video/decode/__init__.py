"""Decode the frames a clip needs: one façade (`decoder.py`) over PyAV, DALI and the JPEG frame decoders."""
