"""The joint law over size, training tokens and precision: its fit, forward checks, stored model and
`kbitlaw predict`; the 16-bit Chinchilla surface."""
