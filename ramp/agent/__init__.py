"""The SAC agent: training a policy that allocates formats (the Gymnasium environment is `ramp.envs`), the
policy file, and allocating with a trained policy."""
