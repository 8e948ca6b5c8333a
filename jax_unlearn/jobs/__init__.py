"""Jobs: the code that runs the engine over many seeds and keeps the results on disk.

``folders`` (run folders: config, chunks, metrics, ``.pth`` export), ``populations`` (N seeds of a method or
a training recipe, resumable), ``sweep`` (hyper-parameter settings as lanes of one program), ``sisa`` (the
SISA shard-ensemble job), ``demo`` (the end-to-end demonstration pipeline).
"""
