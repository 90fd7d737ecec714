"""What the scripts beside this package need and a user rarely edits, one module per concern,
in layers: each imports only modules above it in this list (tests/test_layout.py of the
template checks that the graph has no cycle).

- errors: the errors a run reports in one line, named for what failed, and their wording
- files: writes that never leave half a file, and names that stay inside their directory
- index: partition.json and labels.json read straight into arrays
- distributed: the device, torchrun's processes and ranks, what rank 0 decides for all
- seeding: the seeds of the training process and of each worker, and the generators' states
- data: read and check partition.json, labels.json and one sample file; a directory or a URL
- images: a folder of images in class subfolders, and one image as a uint8 tensor (Pillow)
- cli: the command line of pytorch_script.py, parsed once into frozen Settings
- runs: one directory per run, runs/<name>/, and a resumed run's settings
- preemption: SIGTERM and SIGUSR1 stop a run after a batch, on every rank, resumably
- stream: LitData chunks, local or in object storage (an optional extra)
- loader: the DataLoader arguments, worker seeds, time-outs, failures with known causes
- packed: pack_data.py's copy of the data: reading it, and when it is current
- facts: what a run finds out as it starts (a sample's shape, the classes, its directory)
- checkpoints: the training state, saved to last.pt and best.pt and restored by --resume
- evaluation: evaluate.py's and predict.py's passes, and their reports (metrics, CSV, JSON, PNG)
- exported: the model for serving, torch.export's .pt2 (and ONNX), checked against eager
- trackers: MLflow and Weights & Biases (--tracker; optional extras)
- metrics: what a run prints and logs each epoch (CSV, TensorBoard, a tracker)
- training: what the loop of pytorch_script.py iterates: resume, signals, NaN watch, saving
- exits: how the script ends: its exit status, and one line for a failure of known cause
"""
