"""`python -m diffusion_lab.reproduce`: the command lives in diffusion_lab.app.reproduce."""

from diffusion_lab.app.reproduce import main

if __name__ == "__main__":
    main()
