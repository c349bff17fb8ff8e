"""`python -m multitask.plots`: the short command; the code lives in `multitask.scoring.plots`."""

from multitask.scoring.plots import main

if __name__ == "__main__":
    main()
