"""The market on chain: the TaskMarket contract, its artifact, and a web3 client.

Importing this package is cheap; web3 is imported only when a market is opened.
"""
