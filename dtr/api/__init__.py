"""HTTP layer (Litestar): the only package that imports litestar. Handlers are thin:
parse, one service call, render.
"""
