"""`python -m diffusion_lab.sample`: the command lives in diffusion_lab.app.sample."""

from diffusion_lab.app.sample import main

if __name__ == "__main__":
    main()
