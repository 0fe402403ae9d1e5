"""`python -m diffusion_lab.viz`: the command lives in diffusion_lab.app.viz."""

from diffusion_lab.app.viz import main

if __name__ == "__main__":
    main()
