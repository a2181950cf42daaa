"""Semi-supervised learning from unlabelled CT (issue 10; Pham et al., FLARE22): consensus score of M predictions
(Eq. 1), pseudo-label selection into a new nnU-Net dataset, self-training rounds through nnU-Net's commands, and
the trainer-free parts of cross pseudo supervision (unlabelled cases, loader, loss). One module per job: scoring
(``pseudolabel``), selection, dataset writing (``dataset_writer``), reports, the pseudo-labelling run
(``pseudolabel_run``) and the self-training driver (``self_train``). See docs/semi_supervised.md.
"""
from nnunetv2_ext.semisupervised.consensus import (AgreementCounts, ConsensusResult, agreement_counts,
                                                   averaged_from_probabilities, consensus_score, soft_vote)

__all__ = ["AgreementCounts", "ConsensusResult", "agreement_counts", "averaged_from_probabilities",
           "consensus_score", "soft_vote"]
