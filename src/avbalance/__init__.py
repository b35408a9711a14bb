"""avbalance"""
