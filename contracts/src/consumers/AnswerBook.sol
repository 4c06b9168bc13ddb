// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.19;

/// @title AnswerBook
/// @notice Decodes what an Infernet node delivers for the LLM container and keeps every answer,
///         keyed by (subscription, interval), in delivery order.
/// @dev The node delivers `output = abi.encode(bytes raw_output, bytes processed_output)` and the
///      container sets `raw_output = abi.encode(string text)` (docs/protocol.md §1.4, §2.3), so the text is
///      two decodes away. Malformed output reverts the delivery: a wrong answer is never stored.
abstract contract AnswerBook {
    struct Answer {
        address node;
        string text;
    }

    /// @dev The shortest abi.encode(bytes, bytes): two offsets and two lengths.
    uint256 private constant MIN_ANSWER_BYTES = 128;

    /// @dev subscriptionId => interval => answers in delivery order (redundancy > 1 gives several).
    mapping(uint32 => mapping(uint32 => Answer[])) private _answers;

    /// @dev subscriptionId => latest interval that received an answer (0 = none yet).
    mapping(uint32 => uint32) private _latestInterval;

    /// @notice An answer was decoded and stored.
    event AnswerReceived(
        uint32 indexed subscriptionId, uint32 indexed interval, address indexed node, uint16 redundancy, string answer
    );

    /// @notice A mined delivery carried no answer (a lazy delivery, whose data sits in the Inbox). Nothing
    ///         is stored. The node's pre-flight simulation takes the same path, but it is an eth_call:
    ///         its event is never seen on-chain.
    event EmptyDelivery(uint32 indexed subscriptionId, uint32 indexed interval, address indexed node);

    /// @notice No answer has been stored for this subscription (or interval) yet.
    error NoAnswer(uint32 subscriptionId, uint32 interval);

    /// @notice Decodes `output` and records it; returns false for an empty delivery.
    function _recordAnswer(
        uint32 subscriptionId,
        uint32 interval,
        uint16 redundancy,
        address node,
        bytes calldata output
    ) internal returns (bool) {
        if (output.length < MIN_ANSWER_BYTES) {
            // Too short to be abi.encode(bytes, bytes): no answer. Node 1.4.0 simulates the delivery
            // with 32 zero bytes before running the container (docs/protocol.md §1.4); it would ignore
            // a plain revert, but not reverting keeps its log clean and any node version happy.
            emit EmptyDelivery(subscriptionId, interval, node);
            return false;
        }
        (bytes memory rawOutput,) = abi.decode(output, (bytes, bytes));
        string memory text = abi.decode(rawOutput, (string));
        _answers[subscriptionId][interval].push(Answer({node: node, text: text}));
        if (interval > _latestInterval[subscriptionId]) {
            _latestInterval[subscriptionId] = interval;
        }
        emit AnswerReceived(subscriptionId, interval, node, redundancy, text);
        return true;
    }

    /// @notice How many answers (one per responding node) an interval has received.
    function answerCount(uint32 subscriptionId, uint32 interval) external view returns (uint256) {
        return _answers[subscriptionId][interval].length;
    }

    /// @notice The `index`-th answer of an interval, in delivery order.
    function answerAt(uint32 subscriptionId, uint32 interval, uint256 index)
        external
        view
        returns (address node, string memory text)
    {
        Answer[] storage list = _answers[subscriptionId][interval];
        if (index >= list.length) {
            revert NoAnswer(subscriptionId, interval);
        }
        return (list[index].node, list[index].text);
    }

    /// @notice The first answer of the latest answered interval: what a UI shows.
    function latestAnswer(uint32 subscriptionId)
        external
        view
        returns (uint32 interval, address node, string memory text)
    {
        interval = _latestInterval[subscriptionId];
        if (interval == 0) {
            revert NoAnswer(subscriptionId, 0);
        }
        Answer storage first = _answers[subscriptionId][interval][0];
        return (interval, first.node, first.text);
    }
}
