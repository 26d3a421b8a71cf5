"""Write the run's outputs: the manifest, the summary and the HTML report."""
