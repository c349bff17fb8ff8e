"""`python -m multitask.demo`: the short command; the code lives in `multitask.data.demo`."""

from multitask.data.demo import main

if __name__ == "__main__":
    main()
