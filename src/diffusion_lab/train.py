"""`python -m diffusion_lab.train`: the command lives in diffusion_lab.app.train."""

from diffusion_lab.app.train import main

if __name__ == "__main__":
    main()
