"""The network and the flow: UNet, flow-matching path and guidance, ODE solvers, speed options."""
