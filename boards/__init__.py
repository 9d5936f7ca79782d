"""Board descriptions (the Alveo U280 first) and their Vitis/XRT packaging."""
