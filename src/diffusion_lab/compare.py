"""`python -m diffusion_lab.compare`: the command lives in diffusion_lab.app.compare."""

from diffusion_lab.app.compare import main

if __name__ == "__main__":
    main()
