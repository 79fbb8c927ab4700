"""Evaluation: BFCL-format data with our own AST checker (`bfcl`, `ast_checker`); imports nothing heavy."""
