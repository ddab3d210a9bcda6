"""The paper's analysis tools: Hessian spectrum, flatness under perturbation, loss landscapes,
weight histograms and the Friedman proof of concept (docs/analysis.md)."""
