"""Multi-turn game workflows Trinity-RFT registers that need no external service: FrozenLake (gymnasium's
toy-text environment) and Sudoku (the board is the row, or generated)."""
