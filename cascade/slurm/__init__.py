"""Slurm support: the preemption callback of training jobs. `cascade slurm submit` (in
`cascade.cli.slurm`) fills the shipped sbatch templates (the repository's slurm/ folder)."""
