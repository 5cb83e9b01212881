"""`python -m protgo` (and `torchrun -m protgo train ...`) runs the protgo command."""

from protgo.cli import main

if __name__ == "__main__":
    main()
