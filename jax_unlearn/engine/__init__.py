"""The engine: one seed's training pieces (``train``, ``batches``, ``losses``, ``optim``, ``masks``), the method
protocol (``protocol``), whole runs vmapped over seeds (``run``), progress (``progress``) and multi-process
helpers (``hosts``)."""
