import fire

from .run import main

if __name__ == "__main__":
    fire.Fire(main)
