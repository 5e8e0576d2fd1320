"""Reference solutions of the lessons' exercises. The notebooks never import this package;
the test suite runs every self-check against these."""
