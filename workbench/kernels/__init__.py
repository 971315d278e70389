"""What a kernel is: kernel.yaml (registry), the stage contract (stage), fixtures, and
`wb new kernel` (scaffold, templates/)."""
