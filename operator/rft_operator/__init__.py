"""The RFTJob operator: kopf handlers around pure builders and a pure status function."""
