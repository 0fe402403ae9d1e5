"""The application layer: every command (train, sample, evaluate, compare, viz) and the only
package that uses Hydra. Each command is `diffusion_lab.app.<command>.main`."""
