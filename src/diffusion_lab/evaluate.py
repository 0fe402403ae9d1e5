"""`python -m diffusion_lab.evaluate`: the command lives in diffusion_lab.app.evaluate."""

from diffusion_lab.app.evaluate import main

if __name__ == "__main__":
    main()
