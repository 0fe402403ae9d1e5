from diffusion_lab.viz.cli import main

if __name__ == "__main__":
    main()
