"""tierserve.serving"""
