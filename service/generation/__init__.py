"""Generation: the batching engine that serves every answer, and the plain reference path."""
