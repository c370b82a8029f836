"""Everything that runs: kernel-pack loading, validation, the scheduler, wrappers and the reference."""
