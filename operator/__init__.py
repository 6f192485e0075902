"""tierserve.operator"""
