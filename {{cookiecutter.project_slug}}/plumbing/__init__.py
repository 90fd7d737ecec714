"""What the scripts beside this package need and a user rarely edits, one module per concern:

- checkpoints: save and load last.pt and best.pt, resume a run
- cli: the command line of pytorch_script.py, and its number parsers
- data: read and check partition.json, labels.json and one sample file
- distributed: the device, torchrun's processes, each rank's share of the data
- errors: the errors a run reports in one line, and their wording
- files: writes that never leave half a file
- loader: the DataLoader arguments, worker seeds, time-outs, failures with known causes
- metrics: what a run prints and logs each epoch (CSV, TensorBoard)
- packed: pack_data.py's copy of the data: reading it, and when it is current
- preemption: SIGTERM and SIGUSR1 stop a run after a batch, on every rank, resumably
- runs: one directory per run: runs/<name>/
- stream: LitData chunks, local or in object storage (an optional extra)
- trackers: MLflow and Weights & Biases (--tracker; optional extras)
"""
